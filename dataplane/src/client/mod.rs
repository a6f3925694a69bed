//! Clients of Weir's services.

pub mod master;
