# A Consul client agent: one on every machine that runs workers or wrappers (docs/deployment.md).
# tests/support/consul_cluster.py runs this file. Per machine, on the command line (deploy/systemd/consul.service):
#   -node NAME -bind ADDRESS -data-dir DIR -retry-join SERVER ... (the servers' addresses)
# Workers register with this agent (it runs their health checks and gossips the machine's health);
# wrappers read the catalog through it. Neither talks to the servers directly.
server           = false
client_addr      = "127.0.0.1"  # the HTTP API only for this machine's own workers and wrappers
retry_interval   = "5s"
leave_on_terminate = true     # a machine shut down on purpose leaves: its workers are removed at once
disable_update_check = true
log_level        = "INFO"

ports {
  dns  = -1
  grpc = -1
}
