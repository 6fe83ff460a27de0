use common::settings::Env;
use tickets::app::Application;
use tickets::settings::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init("tickets");
    let settings = Settings::from_env(&Env::from_process())?;
    let app = Application::build(settings).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    common::server::cancel_on_signal(shutdown.clone());
    app.run_until_stopped(shutdown).await?;
    Ok(())
}
