//! Tests of the namespace worker pool with a namespace double.

use super::*;
use crate::namespace::CurrentNamespaces;

#[tokio::test]
async fn runs_jobs_on_worker_threads_and_survives_a_panic() {
    let pool = NsPool::start(Arc::new(CurrentNamespaces), 2).await.unwrap();
    let name = pool
        .run(|| std::thread::current().name().map(str::to_owned))
        .await
        .unwrap();
    assert!(name.unwrap().starts_with("remora-ns-"));

    let panicked = pool.run(|| -> u32 { panic!("boom") }).await;
    assert_eq!(panicked, Err(PoolError::Panicked));
    // Both workers are still there: many jobs still complete.
    let mut sum = 0;
    for i in 0..10u32 {
        sum += pool.run(move || i).await.unwrap();
    }
    assert_eq!(sum, 45);
}

#[derive(Debug)]
struct Refusing;

impl TargetNamespaces for Refusing {
    fn name(&self) -> String {
        "pid/1".into()
    }
    fn enter_net(&self) -> Result<()> {
        Ok(())
    }
    fn enter_files(&self) -> Result<()> {
        Err(Error::NotPermitted {
            target: crate::target::TargetPid(1),
        })
    }
    fn proc_dir(&self) -> std::path::PathBuf {
        "/proc/1".into()
    }
    fn is_alive(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn start_reports_a_worker_that_cannot_enter() {
    let err = NsPool::start(Arc::new(Refusing), 2).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot enter the namespaces of pid/1: operation not permitted"),
        "{err}"
    );
}
