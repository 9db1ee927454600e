//! Route handlers grouped by API. New APIs go here, one file each; the older route modules
//! at the crate root move here as they are touched.

pub(crate) mod account;
pub(crate) mod alerts;
pub(crate) mod console;
pub(crate) mod health;
pub(crate) mod oauth;
pub(crate) mod portal;
pub(crate) mod research_export;
