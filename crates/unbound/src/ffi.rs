//! The parts of `unbound.h`, `unbound-event.h` (libunbound 1.13 and later)
//! and libevent 2.1's `event2/event.h` this crate calls, declared by hand:
//! a few functions and no structs we look into, stable in both libraries'
//! ABIs, so neither bindgen nor a `-sys` crate is needed.

use std::ffi::{c_char, c_int, c_void};

/// `struct ub_ctx`: opaque.
#[repr(C)]
pub(crate) struct UbCtx {
    _private: [u8; 0],
}

/// libevent's `struct event_base`: opaque.
#[repr(C)]
pub(crate) struct EventBase {
    _private: [u8; 0],
}

/// libevent's `struct event`: opaque.
#[repr(C)]
pub(crate) struct Event {
    _private: [u8; 0],
}

/// libevent's `EV_READ`.
pub(crate) const EV_READ: i16 = 0x02;
/// libevent's `EV_PERSIST`.
pub(crate) const EV_PERSIST: i16 = 0x10;

/// libevent's `event_callback_fn` (`evutil_socket_t` is `int` on Unix).
pub(crate) type EventCallback = unsafe extern "C" fn(fd: c_int, what: i16, arg: *mut c_void);

/// `ub_event_callback_type`: `(mydata, rcode, packet, packet_len, sec,
/// why_bogus, was_ratelimited)`.
pub(crate) type UbEventCallback = unsafe extern "C" fn(
    mydata: *mut c_void,
    rcode: c_int,
    packet: *mut c_void,
    packet_len: c_int,
    sec: c_int,
    why_bogus: *mut c_char,
    was_ratelimited: c_int,
);

unsafe extern "C" {
    pub(crate) fn ub_ctx_create_event(base: *mut EventBase) -> *mut UbCtx;
    pub(crate) fn ub_ctx_delete(ctx: *mut UbCtx);
    pub(crate) fn ub_ctx_set_option(ctx: *mut UbCtx, opt: *const c_char, val: *const c_char) -> c_int;
    pub(crate) fn ub_ctx_set_fwd(ctx: *mut UbCtx, addr: *const c_char) -> c_int;
    pub(crate) fn ub_ctx_add_ta(ctx: *mut UbCtx, ta: *const c_char) -> c_int;
    pub(crate) fn ub_ctx_add_ta_file(ctx: *mut UbCtx, fname: *const c_char) -> c_int;
    pub(crate) fn ub_ctx_add_ta_autr(ctx: *mut UbCtx, fname: *const c_char) -> c_int;
    pub(crate) fn ub_ctx_zone_remove(ctx: *mut UbCtx, zone_name: *const c_char) -> c_int;
    pub(crate) fn ub_ctx_debuglevel(ctx: *mut UbCtx, d: c_int) -> c_int;
    pub(crate) fn ub_resolve_event(
        ctx: *mut UbCtx,
        name: *const c_char,
        rrtype: c_int,
        rrclass: c_int,
        mydata: *mut c_void,
        callback: UbEventCallback,
        async_id: *mut c_int,
    ) -> c_int;
    pub(crate) fn ub_strerror(err: c_int) -> *const c_char;
    pub(crate) fn ub_version() -> *const c_char;

    pub(crate) fn event_base_new() -> *mut EventBase;
    pub(crate) fn event_base_free(base: *mut EventBase);
    pub(crate) fn event_base_dispatch(base: *mut EventBase) -> c_int;
    pub(crate) fn event_base_loopbreak(base: *mut EventBase) -> c_int;
    pub(crate) fn event_new(
        base: *mut EventBase,
        fd: c_int,
        events: i16,
        callback: EventCallback,
        arg: *mut c_void,
    ) -> *mut Event;
    pub(crate) fn event_add(event: *mut Event, timeout: *const c_void) -> c_int;
    pub(crate) fn event_free(event: *mut Event);
}
