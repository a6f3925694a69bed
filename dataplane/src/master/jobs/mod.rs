//! Jobs: heavy file system work (load, persist, free, replicate) that the
//! leader plans and the workers carry out. A job's record lives in the
//! replicated [`table`], so a new leader resumes it from its last
//! replicated progress; the [`runner`] is leader-only soft state rebuilt
//! from those records.

pub mod glob;
pub mod runner;
pub mod table;
