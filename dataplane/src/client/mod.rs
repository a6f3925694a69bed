//! Clients of Weir's services.

pub mod fs;
pub mod master;
