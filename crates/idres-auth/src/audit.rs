//! One log event per administrative write and per refusal, on every face:
//! who (the identity, or the node for a secondary node's writes), what
//! (the operation and handle), through which face, and the outcome with
//! its reason. The events have the target `idres::audit`, so that an
//! operator can route them (`IDRES_LOG=idres::audit=info`) and, with
//! `--log-format json`, read them as JSON.

use std::fmt::Display;

/// Logs the outcome of a write: `Ok(())` when applied, else why not.
pub fn write(face: &str, who: &dyn Display, op: &str, handle: &str, outcome: Result<(), &str>) {
    match outcome {
        Ok(()) => tracing::info!(
            target: "idres::audit",
            face,
            who = %who,
            op,
            handle,
            outcome = "applied",
            "write applied"
        ),
        Err(why) => tracing::warn!(
            target: "idres::audit",
            face,
            who = %who,
            op,
            handle,
            outcome = "refused",
            why,
            "write refused"
        ),
    }
}

/// The name of a caller for [`write`].
pub fn who(caller: &crate::Caller) -> String {
    match caller.identity() {
        Some(i) => i.to_string(),
        None => "anonymous".to_owned(),
    }
}
