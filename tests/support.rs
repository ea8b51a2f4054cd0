//! What the whole-system tests share beyond testkit (which cannot depend on `hookrelay`).

use hookrelay_testkit::{Service, TestEnv, spawn_service};

/// `hookrelay all` on `env`, in the test's process, once `/readyz` answers 200.
pub(crate) async fn hookrelay_all(env: &TestEnv) -> Service {
    let src = env.source(&[]);
    spawn_service(|listener, stop| async move { hookrelay::run_all(&src, Some(listener), stop).await }).await
}
