# The ACL policy of one worker's token (docs/reliability.md, Production set-up): it may write its own
# service and nothing else. One policy and token per service name (--svc-name).
service "llama-gpu" {
  policy = "write"
}
