//! Background tasks of a serving process.

pub(crate) mod statistics;
