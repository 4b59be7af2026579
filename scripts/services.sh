#!/usr/bin/env bash
# Makes sure Postgres (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672) answer. Starts them when they
# are installed locally but down; otherwise says how to start them with Docker Compose.
# Never stops or reconfigures a running server.
set -euo pipefail

PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
AMQP_HOST=${AMQP_HOST:-127.0.0.1}
AMQP_PORT=${AMQP_PORT:-5672}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() { # host port name seconds
  local i
  for ((i = 0; i < $4 * 4; i++)); do
    port_open "$1" "$2" && return 0
    sleep 0.25
  done
  echo "services: $3 did not come up on $1:$2 within $4 s" >&2
  return 1
}

how_to() {
  cat >&2 <<MSG
services: $1 is not reachable on $2 and is not installed here.
Start both services with Docker Compose:
    docker compose -f deploy/docker-compose.yml up -d postgres rabbitmq
or point reasonrec elsewhere with REASONREC__DATABASE__URL / REASONREC__BROKER__URL.
MSG
  exit 1
}

if ! port_open "$PG_HOST" "$PG_PORT"; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "services: starting the local PostgreSQL cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    wait_port "$PG_HOST" "$PG_PORT" PostgreSQL 60
  else
    how_to PostgreSQL "$PG_HOST:$PG_PORT"
  fi
fi

# 5672 opens before RabbitMQ finishes booting, so wait for an AMQP handshake-ready status too.
if ! port_open "$AMQP_HOST" "$AMQP_PORT"; then
  if command -v rabbitmq-server >/dev/null 2>&1; then
    echo "services: starting the local RabbitMQ"
    rabbitmq-server -detached || true
    wait_port "$AMQP_HOST" "$AMQP_PORT" RabbitMQ 120
    if command -v rabbitmqctl >/dev/null 2>&1; then
      rabbitmqctl await_startup --timeout 120 >/dev/null 2>&1 || true
    fi
  else
    how_to RabbitMQ "$AMQP_HOST:$AMQP_PORT"
  fi
fi
echo "services: PostgreSQL $PG_HOST:$PG_PORT and RabbitMQ $AMQP_HOST:$AMQP_PORT are up"
