//! Services started by the harness are stopped by PID when the test that owns them panics.

use std::time::Duration;

use lagscale_tests::{Broker, Mongod, RunDir};
use nix::sys::signal::kill;
use nix::unistd::Pid;

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

#[test]
fn a_panicking_test_leaves_no_service_running() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let run = RunDir::new("panics").expect("run dir");
            let broker = Broker::start(&run).await.expect("broker");
            let mongod = Mongod::start(&run).await.expect("mongod");
            tx.send((broker.pid().expect("broker pid"), mongod.pid().expect("mongod pid"), run.path().to_owned()))
                .expect("send");
            panic!("the test fails while its services run");
        })
    })
    .join();
    assert!(outcome.is_err(), "the thread panicked");
    let (broker_pid, mongod_pid, dir) = rx.recv_timeout(Duration::from_secs(1)).expect("pids");
    assert!(!alive(broker_pid), "broker {broker_pid} stopped");
    assert!(!alive(mongod_pid), "mongod {mongod_pid} stopped");
    assert!(!dir.exists(), "run dir {} removed", dir.display());
}
