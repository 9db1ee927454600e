//! Background tasks of a serving process.

pub(crate) mod alerts;
pub(crate) mod statistics;
