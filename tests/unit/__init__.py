"""Fast, in-process tests: no subprocess, no Consul, no network beyond servers started inside the test."""
