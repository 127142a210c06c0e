//! A second, independent client: the same AddFootprint load, but through libdbus (the reference
//! D-Bus implementation, via the `dbus` crate) instead of zbus, one blocking connection per
//! client thread. If the daemon's ratio to the durable floor were an artefact of our zbus
//! client, it would differ here.

use super::measure::{footprint_data, Sample};
use opdbus_blockchain::dbus::{BUS_NAME, OBJECT_PATH};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One slice of calls for every client: call AddFootprint on `destination` until `deadline`.
struct Job {
    destination: &'static str,
    deadline: Instant,
}

type Outcome = Result<Vec<Duration>, String>;

/// Client threads, each holding its own libdbus connection for the whole run (connected and
/// registered once, as the zbus clients are).
pub struct LibdbusClients {
    jobs: Vec<mpsc::Sender<Job>>,
    results: mpsc::Receiver<Outcome>,
}

impl LibdbusClients {
    /// Connects `n` clients to the bus at `address`.
    pub fn connect(address: &str, n: usize) -> Result<LibdbusClients, String> {
        let (results_tx, results) = mpsc::channel();
        let mut jobs = Vec::with_capacity(n);
        let (ready_tx, ready) = mpsc::channel();
        for _ in 0..n {
            let (job_tx, job_rx) = mpsc::channel::<Job>();
            let (address, results_tx, ready_tx) =
                (address.to_string(), results_tx.clone(), ready_tx.clone());
            std::thread::Builder::new()
                .name("libdbus-client".into())
                .spawn(move || {
                    let connection = match open(&address) {
                        Ok(c) => {
                            let _ = ready_tx.send(Ok(()));
                            c
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    for job in job_rx {
                        let _ = results_tx.send(call_until(&connection, &job));
                    }
                })
                .map_err(|e| format!("cannot start a libdbus client thread: {e}"))?;
            jobs.push(job_tx);
        }
        for _ in 0..n {
            ready
                .recv()
                .map_err(|_| "a libdbus client thread died".to_string())??;
        }
        Ok(LibdbusClients { jobs, results })
    }

    /// Every client calls AddFootprint on `destination` back to back for `duration`.
    pub fn run(&self, destination: &'static str, duration: Duration) -> Result<Sample, String> {
        let start = Instant::now();
        let deadline = start + duration;
        for job in &self.jobs {
            job.send(Job {
                destination,
                deadline,
            })
            .map_err(|_| "a libdbus client thread died".to_string())?;
        }
        let mut sample = Sample::default();
        for _ in &self.jobs {
            let latencies = self
                .results
                .recv()
                .map_err(|_| "a libdbus client thread died".to_string())??;
            sample.ops += latencies.len() as u64;
            sample.latencies.extend(latencies);
        }
        sample.elapsed = start.elapsed();
        Ok(sample)
    }
}

fn open(address: &str) -> Result<dbus::blocking::Connection, String> {
    let mut channel = dbus::channel::Channel::open_private(address)
        .map_err(|e| format!("libdbus cannot connect to {address}: {e}"))?;
    channel
        .register()
        .map_err(|e| format!("libdbus cannot say Hello to the bus: {e}"))?;
    Ok(dbus::blocking::Connection::from(channel))
}

fn call_until(connection: &dbus::blocking::Connection, job: &Job) -> Outcome {
    let proxy = connection.with_proxy(job.destination, OBJECT_PATH, Duration::from_secs(60));
    let mut latencies = Vec::new();
    let mut n = 0u64;
    while Instant::now() < job.deadline {
        let data = footprint_data(n);
        let t0 = Instant::now();
        let (_height, _hash): (u64, String) = proxy
            .method_call(
                BUS_NAME,
                "AddFootprint",
                ("network", "create", data.as_str()),
            )
            .map_err(|e| {
                format!(
                    "AddFootprint through libdbus to {} failed: {e}",
                    job.destination
                )
            })?;
        latencies.push(t0.elapsed());
        n += 1;
    }
    Ok(latencies)
}
