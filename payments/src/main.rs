use payments::settings::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::server::run_service("payments", Settings::from_env, payments::app::build).await
}
