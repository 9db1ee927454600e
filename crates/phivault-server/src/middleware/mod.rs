//! Request plumbing shared by the routes: who the client is at the network level.

pub(crate) mod client_address;
