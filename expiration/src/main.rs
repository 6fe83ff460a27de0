use expiration::settings::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::server::run_service("expiration", Settings::from_env, expiration::app::build).await
}
