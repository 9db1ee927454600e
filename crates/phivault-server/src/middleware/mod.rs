//! Request plumbing shared by the routes: who the client is at the network level, and the
//! limits on connections.

pub(crate) mod client_address;
pub(crate) mod connections;
pub(crate) mod refusals;
pub(crate) mod slow_body;
