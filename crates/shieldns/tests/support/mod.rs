pub(crate) mod hierarchy;
