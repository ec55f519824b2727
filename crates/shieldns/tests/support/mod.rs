#![allow(dead_code)] // Each test binary uses a different part of the support code.

pub(crate) mod daemon;
pub(crate) mod hierarchy;
pub(crate) mod upstream;
