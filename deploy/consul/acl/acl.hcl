# Add to server.hcl and client.hcl to turn ACLs on (docs/deployment.md, Tokens). Each agent then needs its
# own agent token (node "NAME" { policy = "write" }), given with `consul acl set-agent-token agent ...`.
acl {
  enabled                  = true
  default_policy           = "deny"
  enable_token_persistence = true
}
