//! One policy for poisoned locks, used everywhere: recover the guard and go on.
//!
//! A `std::sync::Mutex` is poisoned when a thread panics while holding it. Every critical
//! section in this crate is short and leaves its data consistent after each statement
//! (an assignment, a push, a removal; no invariant spans two of them), so the data behind a
//! poisoned lock is still good. Panicking again on it would only turn one failed task (one
//! client connection, one delivery) into a relay that fails every later one. So no `expect`
//! on a lock result anywhere: call [`Lock::locked`] (or [`RwLock::read_now`] /
//! [`RwLock::write_now`]) instead.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock as StdRwLock};
use std::sync::{RwLockReadGuard, RwLockWriteGuard};

/// [`Mutex::lock`] under this crate's policy (see the module docs).
pub trait Lock<T: ?Sized> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Lock<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`std::sync::RwLock`] under this crate's policy (see the module docs).
pub trait RwLock<T: ?Sized> {
    fn read_now(&self) -> RwLockReadGuard<'_, T>;
    fn write_now(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLock<T> for StdRwLock<T> {
    fn read_now(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_now(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_poisoned_lock_is_recovered_with_its_data() {
        let m = Arc::new(Mutex::new(vec![1]));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let mut g = m2.lock().unwrap();
            g.push(2);
            panic!("a task fails while holding the lock");
        })
        .join();
        assert!(m.is_poisoned());
        m.locked().push(3);
        assert_eq!(*m.locked(), vec![1, 2, 3]);

        let rw = Arc::new(StdRwLock::new(0));
        let rw2 = rw.clone();
        let _ = std::thread::spawn(move || {
            let _g = rw2.write().unwrap();
            panic!("poison");
        })
        .join();
        *rw.write_now() += 1;
        assert_eq!(*rw.read_now(), 1);
    }
}
