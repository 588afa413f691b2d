# Shared by the load benchmarks (bench-gateway, bench-compare, bench-proxy-cpu); sourced.

# A free loopback port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# Waits until something listens on loopback port $1 (10 s at most).
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "$(basename "$0"): nothing listens on port $1" >&2; exit 1
}

# Writes DIR/nginx.conf: one worker, no access log, proxy_pass from LISTEN_PORT to
# UPSTREAM_PORT over keep-alive connections.
# nginx proxy_pass to UPSTREAM_PORT on LISTEN_PORT; with FORWARDING_PORT, also the usual
# reverse-proxy set-up there (the client's Host and X-Forwarded-For/-Proto/-Host passed
# on), which is what keygate's proxy sends the upstream on top of its identity headers.
nginx_proxy_conf() { # DIR LISTEN_PORT UPSTREAM_PORT [FORWARDING_PORT]
  mkdir -p "$1"
  local forwarding=""
  if [ -n "${4:-}" ]; then
    forwarding="
  server {
    listen 127.0.0.1:$4;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$http_host;
    }
  }"
  fi
  cat >"$1/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $1;
  proxy_temp_path $1;
  fastcgi_temp_path $1;
  uwsgi_temp_path $1;
  scgi_temp_path $1;
  upstream app { server 127.0.0.1:$3; keepalive 128; }
  server {
    listen 127.0.0.1:$2;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }$forwarding
}
CONF
}
