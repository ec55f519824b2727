//! The part of `unbound.h` (libunbound 1.13 and later) this crate calls,
//! declared by hand: a dozen functions and one struct, stable in the
//! library's ABI since 1.x, so neither bindgen nor a `-sys` crate is needed.

use std::ffi::{c_char, c_int, c_void};

/// `struct ub_ctx`: opaque.
#[repr(C)]
pub(crate) struct UbCtx {
    _private: [u8; 0],
}

/// `struct ub_result`, field for field as in `unbound.h`.
#[repr(C)]
pub(crate) struct UbResult {
    pub(crate) qname: *mut c_char,
    pub(crate) qtype: c_int,
    pub(crate) qclass: c_int,
    pub(crate) data: *mut *mut c_char,
    pub(crate) len: *mut c_int,
    pub(crate) canonname: *mut c_char,
    pub(crate) rcode: c_int,
    pub(crate) answer_packet: *mut c_void,
    pub(crate) answer_len: c_int,
    pub(crate) havedata: c_int,
    pub(crate) nxdomain: c_int,
    pub(crate) secure: c_int,
    pub(crate) bogus: c_int,
    pub(crate) why_bogus: *mut c_char,
    pub(crate) was_ratelimited: c_int,
    pub(crate) ttl: c_int,
}

/// `ub_callback_type`.
pub(crate) type UbCallback = unsafe extern "C" fn(mydata: *mut c_void, err: c_int, result: *mut UbResult);

unsafe extern "C" {
    pub(crate) fn ub_ctx_create() -> *mut UbCtx;
    pub(crate) fn ub_ctx_delete(ctx: *mut UbCtx);
    pub(crate) fn ub_ctx_set_option(ctx: *mut UbCtx, opt: *const c_char, val: *const c_char) -> c_int;
    pub(crate) fn ub_ctx_set_fwd(ctx: *mut UbCtx, addr: *const c_char) -> c_int;
    pub(crate) fn ub_ctx_add_ta(ctx: *mut UbCtx, ta: *const c_char) -> c_int;
    pub(crate) fn ub_ctx_add_ta_file(ctx: *mut UbCtx, fname: *const c_char) -> c_int;
    pub(crate) fn ub_ctx_add_ta_autr(ctx: *mut UbCtx, fname: *const c_char) -> c_int;
    pub(crate) fn ub_ctx_async(ctx: *mut UbCtx, dothread: c_int) -> c_int;
    pub(crate) fn ub_ctx_zone_remove(ctx: *mut UbCtx, zone_name: *const c_char) -> c_int;
    pub(crate) fn ub_ctx_debuglevel(ctx: *mut UbCtx, d: c_int) -> c_int;
    pub(crate) fn ub_fd(ctx: *mut UbCtx) -> c_int;
    pub(crate) fn ub_poll(ctx: *mut UbCtx) -> c_int;
    pub(crate) fn ub_process(ctx: *mut UbCtx) -> c_int;
    pub(crate) fn ub_resolve_async(
        ctx: *mut UbCtx,
        name: *const c_char,
        rrtype: c_int,
        rrclass: c_int,
        mydata: *mut c_void,
        callback: UbCallback,
        async_id: *mut c_int,
    ) -> c_int;
    pub(crate) fn ub_resolve_free(result: *mut UbResult);
    pub(crate) fn ub_strerror(err: c_int) -> *const c_char;
    pub(crate) fn ub_version() -> *const c_char;
}
