/*
 * A plain C poller, the yardstick of `bench-agent-poll`: what the issue's
 * "libmodbus + libmosquitto" poller does, measured on the same machine, the
 * same simulated devices and the same Mosquitto in the same run as the agent.
 *
 * Every second it reads each device's registers with one request (blocking,
 * one device after the other) and publishes one QoS 1 message per device
 * poll, a JSON batch in the agent's own format (integers where the agent
 * writes the same values as JSON numbers; no point descriptions, which the
 * agent adds once a minute), so the bytes on the wire are about the same. libmosquitto's network thread sends and takes the PUBACKs. Unlike
 * the agent it keeps nothing on disk, has no timeouts per device beyond
 * libmodbus's, and no metrics endpoint: it prints its counters, cumulative,
 * once a cycle.
 *
 *   modbus-mqtt-poller MQTT_PORT REGISTERS HOST:PORT...
 *
 * Built by the benchmark with: cc -O2 -o poller modbus-mqtt-poller.c
 *   -I/usr/include/modbus -lmodbus -lmosquitto
 * (Debian: libmodbus-dev libmosquitto-dev).
 */
#include <errno.h>
#include <modbus.h>
#include <mosquitto.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_DEVICES 1000
#define MAX_REGS 125

struct device {
    char host[64];
    int port;
    char id[16];
    modbus_t *ctx;
};

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MQTT_PORT REGISTERS HOST:PORT...\n", argv[0]);
        return 2;
    }
    int mqtt_port = atoi(argv[1]);
    int nregs = atoi(argv[2]);
    int ndev = argc - 3;
    if (nregs < 1 || nregs > MAX_REGS || ndev > MAX_DEVICES) {
        fprintf(stderr, "1..%d registers, at most %d devices\n", MAX_REGS, MAX_DEVICES);
        return 2;
    }
    static struct device devs[MAX_DEVICES];
    for (int i = 0; i < ndev; i++) {
        const char *colon = strrchr(argv[3 + i], ':');
        if (!colon || (size_t)(colon - argv[3 + i]) >= sizeof devs[i].host) {
            fprintf(stderr, "bad address %s\n", argv[3 + i]);
            return 2;
        }
        memcpy(devs[i].host, argv[3 + i], colon - argv[3 + i]);
        devs[i].host[colon - argv[3 + i]] = 0;
        devs[i].port = atoi(colon + 1);
        snprintf(devs[i].id, sizeof devs[i].id, "dev-%03d", i);
        devs[i].ctx = NULL;
    }

    mosquitto_lib_init();
    struct mosquitto *mq = mosquitto_new("reference-poller", true, NULL);
    if (!mq || mosquitto_connect(mq, "127.0.0.1", mqtt_port, 30) != MOSQ_ERR_SUCCESS ||
        mosquitto_loop_start(mq) != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "cannot connect to the broker on port %d\n", mqtt_port);
        return 1;
    }

    uint16_t regs[MAX_REGS];
    static char payload[64 * MAX_REGS + 512];
    char topic[128];
    uint64_t seq = 0, polls = 0, registers = 0, failed = 0, cycles = 0;
    int64_t next = now_ms();
    for (;;) {
        for (int i = 0; i < ndev; i++) {
            struct device *d = &devs[i];
            if (!d->ctx) {
                d->ctx = modbus_new_tcp(d->host, d->port);
                if (!d->ctx || modbus_connect(d->ctx) == -1) {
                    if (d->ctx) modbus_free(d->ctx);
                    d->ctx = NULL;
                    failed++;
                    continue;
                }
                modbus_set_slave(d->ctx, 1); /* the agent's `unit = 1` */
                modbus_set_response_timeout(d->ctx, 1, 0);
            }
            int64_t polled_at = now_ms();
            int n = modbus_read_registers(d->ctx, 0, nregs, regs);
            polls++;
            if (n != nregs) {
                if (failed++ == 0) fprintf(stderr, "%s: %s\n", d->id, modbus_strerror(errno));
                modbus_close(d->ctx);
                modbus_free(d->ctx);
                d->ctx = NULL;
                continue;
            }
            registers += (uint64_t)n;
            int64_t t = now_ms();
            int len = snprintf(payload, sizeof payload,
                               "{\"v\":1,\"site\":\"bench\",\"agent\":\"reference\",\"seq\":%llu,"
                               "\"device\":\"%s\",\"polled_at\":%lld,\"readings\":[",
                               (unsigned long long)++seq, d->id, (long long)polled_at);
            for (int r = 0; r < n; r++) {
                len += snprintf(payload + len, sizeof payload - len,
                                "%s{\"p\":\"%s.r%03d\",\"v\":%u,\"t\":%lld}", r ? "," : "", d->id,
                                r, regs[r], (long long)t);
            }
            len += snprintf(payload + len, sizeof payload - len, "]}");
            snprintf(topic, sizeof topic, "roomguard/v1/bench/reference/batch");
            if (mosquitto_publish(mq, NULL, topic, len, payload, 1, false) != MOSQ_ERR_SUCCESS)
                failed++;
        }
        cycles++;
        printf("cycle %llu polls %llu registers %llu failed %llu\n", (unsigned long long)cycles,
               (unsigned long long)polls, (unsigned long long)registers,
               (unsigned long long)failed);
        fflush(stdout);
        next += 1000;
        int64_t wait = next - now_ms();
        if (wait < 0) {
            next = now_ms();
        } else {
            struct timespec ts = {wait / 1000, (wait % 1000) * 1000000};
            while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
            }
        }
    }
}
