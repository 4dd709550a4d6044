//! What a trial came to: guest state captured and normalised
//! ([`capture`]), the verdict ([`verdict`]), the comparison with the
//! committed snapshot ([`snapshot`]) and the Markdown report and table rows
//! ([`report`]).

pub mod capture;
pub mod evidence;
pub mod outcome;
pub mod report;
pub mod snapshot;
pub mod verdict;
