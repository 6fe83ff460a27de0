use auth::settings::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::server::run_service("auth", Settings::from_env, auth::app::build).await
}
