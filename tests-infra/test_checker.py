"""The checker's own parsers: a wrong parser would make the other tests pass for the wrong reason."""

import infra_model as m


def reads(source):
    return m.env_reads(m.strip_test_code(m.rust_tokens(source))).names


def test_require_makes_a_variable_required_and_other_accessors_optional():
    source = '''
        fn from_env(env: &Env) -> Result<Self, SettingsError> {
            let key = env.require("JWT_KEY")?;
            let db = env.or("MONGO_DB", "auth");
            let p = env.parse_or("PORT", 3000)?;
            let s = env.flag_or("COOKIE_SECURE", false)?;
            let w = seconds_or(env, "EXPIRATION_WINDOW_SECONDS", 60)?;
            let o = env.optional("STRIPE_API_BASE");
            let nested = Url::parse(&env.require("API_BASE_URL")?)?;
        }'''
    assert reads(source) == {"JWT_KEY": True, "MONGO_DB": False, "PORT": False, "COOKIE_SECURE": False,
                             "EXPIRATION_WINDOW_SECONDS": False, "STRIPE_API_BASE": False,
                             "API_BASE_URL": True}


def test_comments_strings_with_braces_and_test_modules_are_not_read_as_code():
    source = r'''
        // env.require("IN_A_COMMENT")
        /* env.require("IN_A_BLOCK") /* nested */ */
        fn f(env: &Env) { let x = format!("{name} {{"); let c = '{'; let l: &'static str = "}";
            env.optional("REAL_ONE"); let raw = r#"env.require("IN_RAW")"#; }
        #[cfg(test)]
        mod tests {
            fn t() { env.require("ONLY_IN_TESTS"); }
        }
        #[test]
        fn alone() { env.require("ALSO_TEST"); }
        fn g(env: &Env) { env.require("AFTER_TESTS"); }
    '''
    assert reads(source) == {"REAL_ONE": False, "AFTER_TESTS": True}


def test_common_settings_groups_follow_the_items_a_service_uses(tmp_path, monkeypatch):
    common = tmp_path / "common" / "src"
    common.mkdir(parents=True)
    (common / "settings.rs").write_text('''
        impl Env { pub fn require(&self, name: &'static str) {} }
        pub struct MongoSettings { url: String }
        impl MongoSettings { pub fn from_env(env: &Env) { env.require("MONGO_URL"); env.or("MONGO_DB", "x"); } }
        impl HttpSettings { pub fn from_env(env: &Env) { env.parse_or("PORT", 3000); } }
        pub fn server(env: &Env) { HttpSettings::from_env(env); env.optional("HOST"); }
        #[cfg(test)] mod tests { fn t() { env.require("NOT_THIS"); } }
    ''')
    service = tmp_path / "auth" / "src"
    service.mkdir(parents=True)
    (service / "settings.rs").write_text('''
        use common::settings::{MongoSettings, server};
        pub fn load(env: &Env) { let m = MongoSettings::from_env(env); let s = server(env);
            let k = env.require("JWT_KEY"); }
    ''')
    monkeypatch.setattr(m, "ROOT", tmp_path)
    m.common_settings_groups.cache_clear()
    try:
        assert m.parsed_env("auth") == {"MONGO_URL": True, "MONGO_DB": False, "PORT": False, "HOST": False,
                                        "JWT_KEY": True, "RUST_LOG": False, "OTEL_EXPORTER_OTLP_ENDPOINT": False}
        assert m.parsed_env("tickets") is None
    finally:
        m.common_settings_groups.cache_clear()


def test_ingress_paths_and_nginx_locations_reduce_to_the_same_prefixes():
    for path, prefix in [("/api/users/?(.*)", "/api/users"), ("/?(.*)", "/"), ("/", "/"),
                         ("/api/users/", "/api/users"), ("^/api/users(/|$)", "/api/users"),
                         ("/api/orders/?(.*)$", "/api/orders"), ("/api/tickets", "/api/tickets")]:
        assert m.route_prefix(path) == prefix, path


def test_nginx_locations_resolve_upstreams_and_direct_proxy_passes():
    conf = '''
        upstream auth { server 127.0.0.1:3001; }
        server {
            listen 8080;
            # location /commented { proxy_pass http://127.0.0.1:9999; }
            location /api/users/ { proxy_pass http://auth; }
            location ~ ^/api/tickets(/|$) { proxy_set_header Host $host; proxy_pass http://127.0.0.1:3002; }
            location = /nginx-health { return 200; }
            location / { proxy_pass http://localhost:3000/; }
        }'''
    assert m.nginx_locations(conf) == {"/api/users": 3001, "/api/tickets": 3002, "/": 3000}


def test_impl_blocks_are_grouped_under_their_type_whatever_the_generics_or_trait():
    tokens = m.rust_tokens('''
        impl<'a, T: Into<String>> Loader<'a, T> { fn a(env: &Env) { env.require("A_VAR"); } }
        impl std::fmt::Display for Secretish { fn fmt(&self) { env.optional("B_VAR"); } }
        pub fn helper(env: &Env) { env.or("C_VAR", "x"); }
    ''')
    groups = {name: m.env_reads(body).names for name, body in m.top_level_groups(tokens).items()}
    assert groups == {"Loader": {"A_VAR": True}, "Secretish": {"B_VAR": False}, "helper": {"C_VAR": False}}
