# Rendered by ccoas from the plan of stack dev (dev): do not edit.
ui = false
log_level = "info"
api_addr = "http://vault:8200"

# mlock needs IPC_LOCK, and a rootless engine cannot lock memory: it is off, and the host
# must run without swap (or with encrypted swap), see the README. (OpenBao never locks
# memory and logs that it ignores this setting.)
disable_mlock = true

# Integrated storage (raft) on the data volume, one node: OpenBao has no "file" backend,
# and raft is what both Vault and OpenBao recommend. Its cluster port stays on loopback.
storage "raft" {
  path    = "/vault/data"
  node_id = "dev-vault"
}
cluster_addr = "https://127.0.0.1:8201"

# Plain HTTP on purpose: this listener is only on the auth network, which is internal (no
# route off the host) and isolated from the stack's other networks; TLS would add a CA to
# distribute without removing an attacker from that path.
listener "tcp" {
  address         = "0.0.0.0:8200"
  cluster_address = "127.0.0.1:8201"
  tls_disable     = true
  # The monitoring component (on the auth network) scrapes /v1/sys/metrics without a token:
  # request, seal and storage figures, no secret and no secret's name.
  telemetry {
    unauthenticated_metrics_access = true
  }
}

telemetry {
  prometheus_retention_time = "60s"
  disable_hostname          = true
}

# ccoas initialises, unseals and writes secrets through this socket, in a directory only
# the host's ccoas user shares with the container: no port is published for it.
listener "unix" {
  address      = "/run/vault/vault.sock"
  # Vault applies socket_mode only when socket_user and socket_group are set too.
  socket_mode  = "0666"
  socket_user  = "100"
  socket_group = "1000"
  # OpenBao >= 2.5.3 disables the unauthenticated generate-root endpoints. ccoas needs them
  # only to recover its own token from the unseal key (the root token is revoked after
  # bootstrap), and only on this socket, which only the host's ccoas state owner reaches.
  disable_unauthed_generate_root_endpoints = false
}

# OpenBao refuses to enable audit devices over the API: it is declared here. (HashiCorp
# Vault, the registry image, gets the same device from ccoas's bootstrap instead.)
audit "file" "file" {
  options {
    file_path = "/vault/data/audit.log"
  }
}
