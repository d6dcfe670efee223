#!/bin/sh
# Refuse to start the compose stack with a placeholder or a short secret: every argument NAME:MIN names an
# environment variable that must be set, must not contain the "change-me" of docker/.env.example, and must be at
# least MIN characters long. Exits 1 naming every variable to fix; 0 when all are fine.
#   sh docker/check-secrets.sh RAY_AUTH_TOKEN:32 MLFLOW_ADMIN_PASSWORD:16
set -u
bad=0
for spec in "$@"; do
    name=${spec%%:*}
    min=${spec#*:}
    eval "value=\${$name-}"
    case $value in
        "") problem="is not set" ;;
        *[Cc][Hh][Aa][Nn][Gg][Ee]-[Mm][Ee]*) problem="is still the change-me placeholder of docker/.env.example" ;;
        *) if [ "${#value}" -lt "$min" ]; then problem="is shorter than $min characters"; else problem=""; fi ;;
    esac
    if [ -n "$problem" ]; then
        echo "docker/.env: $name $problem; set it to a secret of your own, e.g. \`openssl rand -hex 24\`" >&2
        bad=1
    fi
done
if [ "$bad" -ne 0 ]; then
    echo "refusing to start the attnsearch stack (docker/compose.yaml) until docker/.env is fixed" >&2
    exit 1
fi
echo "secrets: ok"
