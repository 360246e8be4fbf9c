//! Exactly one reaper per process: a thread that calls `waitpid(-1)` and hands each status to
//! whoever registered for that pid. Nothing else in the daemon may wait for children
//! (`std::process::Child::wait` would race it and get ECHILD).

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

#[derive(Default)]
struct Table {
    waiting: HashMap<i32, Sender<i32>>,
    /// Statuses reaped before anyone registered (a child that exited very fast).
    early: HashMap<i32, i32>,
}

/// Handle to the process's reaper thread.
#[derive(Clone)]
pub struct Reaper {
    table: Arc<Mutex<Table>>,
}

fn code(status: WaitStatus) -> Option<(i32, i32)> {
    match status {
        WaitStatus::Exited(p, c) => Some((p.as_raw(), c)),
        WaitStatus::Signaled(p, s, _) => Some((p.as_raw(), 128 + s as i32)),
        _ => None,
    }
}

impl Reaper {
    /// Starts the reaper thread.
    pub fn start() -> Reaper {
        let r = Reaper {
            table: Arc::new(Mutex::new(Table::default())),
        };
        let table = r.table.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || {
                loop {
                    match waitpid(Pid::from_raw(-1), None) {
                        Ok(status) => {
                            let Some((pid, c)) = code(status) else {
                                continue;
                            };
                            if let Ok(mut t) = table.lock() {
                                match t.waiting.remove(&pid) {
                                    Some(tx) => {
                                        let _ = tx.send(c);
                                    }
                                    None => {
                                        t.early.insert(pid, c);
                                    }
                                }
                            }
                        }
                        Err(nix::errno::Errno::EINTR) => {}
                        // No children right now.
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
            .ok();
        r
    }

    /// A receiver for `pid`'s exit code (128+N for a signal).
    pub fn watch(&self, pid: i32) -> Receiver<i32> {
        let (tx, rx) = channel();
        if let Ok(mut t) = self.table.lock() {
            match t.early.remove(&pid) {
                Some(c) => {
                    let _ = tx.send(c);
                }
                None => {
                    t.waiting.insert(pid, tx);
                }
            }
        }
        rx
    }
}
