#!/usr/bin/env bash
# Debian packages edgelake needs: Java 17 and Maven (Apache Kafka and Spark run on the JVM; Maven
# fetches Kafka's jars from the pinned poms under infra/jars), the Fashion-MNIST data set, Chromium
# (the dashboard's test renders the page in headless Chromium), redis-server (the card histories
# shared by several API replicas; its tests start a real one), kcat (an independent Kafka
# client the interop tests produce with) and prometheus, for its promtool (the tests check and unit-test the
# alert rules under infra/prometheus; the Prometheus server the package also installs is kept stopped) and
# postgresql (the control plane shared by API replicas; its tests start their own cluster on loopback, and
# the cluster the package creates is kept stopped) and nginx (the load balancer of the multi-replica test,
# started by it on loopback; the package's own server is kept stopped).
set -euo pipefail

missing=()
java_major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
[ "${java_major:-0}" -ge 17 ] 2>/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing+=(nginx)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo)
else
    echo "edgelake needs these Debian packages: ${missing[*]}" >&2
    echo "Install them as root: apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
# Only promtool is wanted: where systemd runs, the package starts a Prometheus server; stop it and keep it off.
if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    "${sudo[@]}" systemctl disable --now prometheus.service
fi
for service in postgresql nginx; do
    if [[ " ${missing[*]} " == *" $service "* ]] && [ -d /run/systemd/system ]; then
        "${sudo[@]}" systemctl disable --now "$service.service"
    fi
done
