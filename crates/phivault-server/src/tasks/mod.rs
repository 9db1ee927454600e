//! Background tasks of a serving process.

pub(crate) mod alerts;
pub(crate) mod leadership;
pub(crate) mod signing_keys;
pub(crate) mod statistics;
