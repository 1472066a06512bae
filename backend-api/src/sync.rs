//! The one mutex helper of the crate.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, ignoring poisoning: every critical section in this crate leaves its data
/// consistent (a push, a pop, a swap, a counter), so a panic elsewhere while it was held
/// changes nothing a later holder relies on.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
