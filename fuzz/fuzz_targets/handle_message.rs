//! Any bytes as a Handle message: framing, every request body, every reply
//! body, and the typed value views must return errors, never panic.
#![no_main]

use idres_model::{AdminRef, SiteInfo, ValueList};
use idres_wire::{Message, OpCode, OpFlags, Reply, Request, ResponseCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse_with_envelope(data) {
        if let Ok(Request::CreateHandle { values, .. }) = Request::decode(m.header.op_code, m.body) {
            let _ = idres_model::validate_values(&values);
        }
        let _ = Reply::decode(m.header.op_code, m.header.response_code, m.header.op_flags, m.body);
    }
    for op in [1u32, 2, 100, 101, 102, 103, 104, 105, 200] {
        let _ = Request::decode(OpCode(op), data);
    }
    for rc in [1u32, 2, 100, 302, 402] {
        let _ = Reply::decode(OpCode::RESOLUTION, ResponseCode(rc), OpFlags(0x0080_0000), data);
    }
    let _ = AdminRef::decode(data);
    let _ = ValueList::decode(data);
    let _ = SiteInfo::decode(data);
});
