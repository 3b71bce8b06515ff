//! runnel storage node: partition replicas on local disk (see [`log`] for the partition log engine).

pub mod log;
