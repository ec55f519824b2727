//! `rpz`: Response Policy Zone files (to be completed).

use crate::rule::RuleSink;

pub(super) fn parse(text: &[u8], sink: &mut dyn RuleSink) {
    let _ = (text, sink);
}
