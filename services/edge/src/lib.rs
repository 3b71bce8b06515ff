//! The edge role (in progress).
