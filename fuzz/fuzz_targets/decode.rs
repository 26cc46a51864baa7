//! One fuzz target for what the shim decodes from the outside:
//!
//! - every Task API request type (parse_from_bytes must not panic; whatever
//!   decodes must survive encode -> decode unchanged),
//! - the ttrpc envelope as the server handles it: a stream of frames
//!   (10-byte header + payload), each payload a `ttrpc::Request` whose
//!   `payload` is decoded as the request type its `method` names,
//! - the shim's own parsers of runtime options (the `start` stdin Any and
//!   Create's options, CRI's runtimeoptions TOML) and of its argv.
//!
//! The shim's parsers come from its library (rustshim::options, rustshim::cli).
//! The first input byte picks what to fuzz.
#![no_main]
#![allow(dead_code, unused_imports)]

use containerd_shim_protos::api;
use containerd_shim_protos::bootstrap_api::BootstrapParams;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::{CheckpointOptions, Options as RuncOptions};
use libfuzzer_sys::fuzz_target;

use rustshim::{cli, options};

/// decode; if it decodes, encode and decode again: same message.
fn roundtrip<M: Message + PartialEq + std::fmt::Debug>(data: &[u8]) -> Option<M> {
    let m = M::parse_from_bytes(data).ok()?;
    let bytes = m.write_to_bytes().expect("a decoded message must encode");
    let again = M::parse_from_bytes(&bytes).expect("an encoded message must decode");
    assert_eq!(m, again, "decode(encode(m)) != m");
    Some(m)
}

/// The request type of each Task method, as the server decodes the payload.
fn decode_request(method: &str, payload: &[u8]) {
    match method {
        "State" => drop(roundtrip::<api::StateRequest>(payload)),
        "Create" => drop(roundtrip::<api::CreateTaskRequest>(payload)),
        "Start" => drop(roundtrip::<api::StartRequest>(payload)),
        "Delete" => drop(roundtrip::<api::DeleteRequest>(payload)),
        "Pids" => drop(roundtrip::<api::PidsRequest>(payload)),
        "Pause" => drop(roundtrip::<api::PauseRequest>(payload)),
        "Resume" => drop(roundtrip::<api::ResumeRequest>(payload)),
        "Checkpoint" => drop(roundtrip::<api::CheckpointTaskRequest>(payload)),
        "Kill" => drop(roundtrip::<api::KillRequest>(payload)),
        "Exec" => drop(roundtrip::<api::ExecProcessRequest>(payload)),
        "ResizePty" => drop(roundtrip::<api::ResizePtyRequest>(payload)),
        "CloseIO" => drop(roundtrip::<api::CloseIORequest>(payload)),
        "Update" => drop(roundtrip::<api::UpdateTaskRequest>(payload)),
        "Wait" => drop(roundtrip::<api::WaitRequest>(payload)),
        "Stats" => drop(roundtrip::<api::StatsRequest>(payload)),
        "Connect" => drop(roundtrip::<api::ConnectRequest>(payload)),
        "Shutdown" => drop(roundtrip::<api::ShutdownRequest>(payload)),
        _ => {}
    }
}

const METHODS: [&str; 17] = [
    "State",
    "Create",
    "Start",
    "Delete",
    "Pids",
    "Pause",
    "Resume",
    "Checkpoint",
    "Kill",
    "Exec",
    "ResizePty",
    "CloseIO",
    "Update",
    "Wait",
    "Stats",
    "Connect",
    "Shutdown",
];

/// Frames as the server reads them off a connection.
fn frames(mut data: &[u8]) {
    while data.len() >= ttrpc::proto::MESSAGE_HEADER_LENGTH {
        let h = ttrpc::MessageHeader::from(&data[..ttrpc::proto::MESSAGE_HEADER_LENGTH]);
        data = &data[ttrpc::proto::MESSAGE_HEADER_LENGTH..];
        let len = h.length as usize;
        if len > ttrpc::proto::MESSAGE_LENGTH_MAX {
            return; // the server refuses (and discards) oversized frames
        }
        let Some(payload) = data.get(..len) else {
            return;
        };
        data = &data[len..];
        if h.type_ != ttrpc::proto::MESSAGE_TYPE_REQUEST {
            continue;
        }
        if let Some(req) = roundtrip::<ttrpc::Request>(payload) {
            if req.service.ends_with(".Task") {
                decode_request(&req.method, &req.payload);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 24 {
        n @ 0..=16 => decode_request(METHODS[n as usize], rest),
        17 => frames(rest),
        18 => {
            drop(roundtrip::<ttrpc::Request>(rest));
            drop(roundtrip::<ttrpc::Response>(rest));
        }
        19 => {
            // runtime options as `start` (stdin) and Create get them
            if let Some(any) = roundtrip::<Any>(rest) {
                if !any.type_url.contains("ConfigPath") {
                    let _ = options::decode(Some(&any));
                }
            }
        }
        20 => {
            // an options Any of each known type with a fuzzed value
            let k = rest.first().copied().unwrap_or(0);
            let value = rest.get(1..).unwrap_or_default();
            let mut any = Any::new();
            any.type_url = match k % 4 {
                0 => "containerd.runc.v1.Options",
                1 => "type.googleapis.com/containerd.runc.v1.Options",
                2 => "containerd.linux.runc.CreateOptions",
                _ => "runtimeoptions.v1.Options",
            }
            .into();
            any.value = value.to_vec();
            // runtimeoptions' ConfigPath (field 2) is read from disk: keep the
            // fuzzer from naming /dev/zero and friends
            if k % 4 == 3 {
                if let Ok(m) = containerd_shim_protos::protobuf::well_known_types::empty::Empty::parse_from_bytes(value) {
                    if m.special_fields.unknown_fields().get(2).is_some() {
                        return;
                    }
                }
            }
            let _ = options::decode(Some(&any));
            drop(roundtrip::<RuncOptions>(value));
            drop(roundtrip::<CheckpointOptions>(value));
        }
        21 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = options::from_toml(text);
            }
        }
        22 => {
            let args = rest
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned());
            let _ = cli::parse(args);
        }
        _ => drop(roundtrip::<BootstrapParams>(rest)),
    }
});
