//! Who is making a change (the bottom module of the `schedule` commands). The schedules
//! themselves, file and stored combined as the leader combines them, are
//! [`scheduler::catalog::Catalog`], which the console reads too.

/// What to call the person making a change or a trigger.
pub fn who() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "fleetctl".into())
}
