// lookups: times name lookups, for `hack/bench dns`. One source, built twice: as a wasm
// command component (world tcp-echo: wasi:sockets ip-name-lookup and wasi:clocks
// monotonic-clock) for a krustlet pod, and natively (getaddrinfo and clock_gettime, static
// glibc) for a container on the upstream kubelet's node. Each side resolves as it does for
// any program there: krustlet's pod resolver, or glibc with the container's resolv.conf.
//
// Environment:
//   LOOKUP_NAME    the name looked up; each "{n}" in it is replaced by the lookup's number
//                  n written as two address octets "H-L" (n = H * 256 + L), so that
//                  "10-244-{n}.default.pod.cluster.local." names a different pod address
//                  each time
//   LOOKUP_FIRST   the first lookup's number (default 0)
//   LOOKUP_WARMUP  lookups made first and not reported (default 1)
//   LOOKUP_COUNT   lookups timed and reported (default 100, at most 60000)
//
// Prints "first NAME ADDRESS" (the first timed lookup's first address), then "ns T" for
// each timed lookup (its time in nanoseconds, printed after all of them ran), then
// "done COUNT". A lookup that fails prints "lookup NAME failed: WHY" on stderr and ends the
// program with exit status 1. The native side asks getaddrinfo with AF_UNSPEC and no
// flags (A and AAAA queries, as krustlet's resolver asks).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_COUNT 60000
#define NAME_CAP 256

#ifdef __wasi__
#include "bindings/tcp-echo/tcp_echo.h"

// Writes LINE and a newline to stdout, or to stderr when TO_ERR.
static void emit(int to_err, const char *line) {
    wasi_io_streams_own_output_stream_t stream =
        to_err ? wasi_cli_stderr_get_stderr() : wasi_cli_stdout_get_stdout();
    wasi_io_streams_borrow_output_stream_t s = wasi_io_streams_borrow_output_stream(stream);
    const char *parts[] = {line, "\n"};
    for (int i = 0; i < 2; i++) {
        tcp_echo_list_u8_t bytes = {(uint8_t *)parts[i], strlen(parts[i])};
        wasi_io_streams_stream_error_t err;
        if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(s, &bytes, &err) &&
            err.tag == WASI_IO_STREAMS_STREAM_ERROR_LAST_OPERATION_FAILED)
            wasi_io_error_error_drop_own(err.val.last_operation_failed);
    }
    wasi_io_streams_output_stream_drop_own(stream);
}

static uint64_t now_ns(void) { return wasi_clocks_monotonic_clock_now(); }

// The value of the environment variable KEY copied into OUT (at most CAP - 1 bytes);
// 0 when it is not set.
static int env_value(const char *key, char *out, size_t cap) {
    tcp_echo_list_tuple2_string_string_t env;
    wasi_cli_environment_get_environment(&env);
    int found = 0;
    for (size_t i = 0; i < env.len && !found; i++) {
        tcp_echo_string_t *k = &env.ptr[i].f0, *v = &env.ptr[i].f1;
        if (k->len != strlen(key) || memcmp(k->ptr, key, k->len) != 0) continue;
        size_t n = v->len < cap - 1 ? v->len : cap - 1;
        memcpy(out, v->ptr, n);
        out[n] = '\0';
        found = 1;
    }
    tcp_echo_list_tuple2_string_string_free(&env);
    return found;
}

static void address_text(const wasi_sockets_network_ip_address_t *ip, char *out, size_t cap) {
    if (ip->tag == WASI_SOCKETS_NETWORK_IP_ADDRESS_IPV4) {
        const wasi_sockets_network_ipv4_address_t *a = &ip->val.ipv4;
        snprintf(out, cap, "%u.%u.%u.%u", a->f0, a->f1, a->f2, a->f3);
    } else {
        const wasi_sockets_network_ipv6_address_t *a = &ip->val.ipv6;
        snprintf(out, cap, "%x:%x:%x:%x:%x:%x:%x:%x", a->f0, a->f1, a->f2, a->f3, a->f4, a->f5,
                 a->f6, a->f7);
    }
}

// Resolves NAME, reading every address; the first one into FIRST. 0 on success, otherwise
// the reason in WHY.
static int resolve(const char *name, char *first, size_t cap, char *why, size_t why_cap) {
    wasi_sockets_instance_network_own_network_t network =
        wasi_sockets_instance_network_instance_network();
    tcp_echo_string_t text = {(uint8_t *)name, strlen(name)};
    wasi_sockets_ip_name_lookup_own_resolve_address_stream_t stream;
    wasi_sockets_ip_name_lookup_error_code_t err;
    int failed = 0, addresses = 0;
    if (!wasi_sockets_ip_name_lookup_resolve_addresses(wasi_sockets_network_borrow_network(network),
                                                       &text, &stream, &err)) {
        snprintf(why, why_cap, "error %u", (unsigned)err);
        wasi_sockets_network_network_drop_own(network);
        return 1;
    }
    wasi_sockets_ip_name_lookup_borrow_resolve_address_stream_t s =
        wasi_sockets_ip_name_lookup_borrow_resolve_address_stream(stream);
    for (;;) {
        wasi_sockets_ip_name_lookup_option_ip_address_t next;
        if (!wasi_sockets_ip_name_lookup_method_resolve_address_stream_resolve_next_address(s, &next,
                                                                                            &err)) {
            if (err != WASI_SOCKETS_NETWORK_ERROR_CODE_WOULD_BLOCK) {
                snprintf(why, why_cap, "error %u", (unsigned)err);
                failed = 1;
                break;
            }
            wasi_io_poll_own_pollable_t ready =
                wasi_sockets_ip_name_lookup_method_resolve_address_stream_subscribe(s);
            wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(ready));
            wasi_io_poll_pollable_drop_own(ready);
            continue;
        }
        if (!next.is_some) break;
        if (addresses++ == 0) address_text(&next.val, first, cap);
    }
    wasi_sockets_ip_name_lookup_resolve_address_stream_drop_own(stream);
    wasi_sockets_network_network_drop_own(network);
    if (!failed && addresses == 0) {
        snprintf(why, why_cap, "no address");
        failed = 1;
    }
    return failed;
}
#else
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>

static void emit(int to_err, const char *line) {
    fputs(line, to_err ? stderr : stdout);
    fputc('\n', to_err ? stderr : stdout);
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int env_value(const char *key, char *out, size_t cap) {
    const char *v = getenv(key);
    if (!v) return 0;
    snprintf(out, cap, "%s", v);
    return 1;
}

static int resolve(const char *name, char *first, size_t cap, char *why, size_t why_cap) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *found;
    int rc = getaddrinfo(name, NULL, &hints, &found);
    if (rc != 0) {
        snprintf(why, why_cap, "%s", gai_strerror(rc));
        return 1;
    }
    const void *addr = found->ai_family == AF_INET
                           ? (const void *)&((struct sockaddr_in *)found->ai_addr)->sin_addr
                           : (const void *)&((struct sockaddr_in6 *)found->ai_addr)->sin6_addr;
    if (!inet_ntop(found->ai_family, addr, first, cap)) snprintf(first, cap, "?");
    freeaddrinfo(found);
    return 0;
}
#endif

static unsigned long env_number(const char *key, unsigned long fallback) {
    char text[32];
    if (!env_value(key, text, sizeof text)) return fallback;
    char *end;
    unsigned long n = strtoul(text, &end, 10);
    return end != text && *end == '\0' ? n : fallback;
}

// PATTERN with each "{n}" replaced by N as "H-L", into OUT.
static void name_for(const char *pattern, unsigned long n, char *out, size_t cap) {
    size_t at = 0;
    for (const char *p = pattern; *p && at + 1 < cap;) {
        if (strncmp(p, "{n}", 3) == 0) {
            int w = snprintf(out + at, cap - at, "%lu-%lu", (n / 256) % 256, n % 256);
            if (w > 0) at += (size_t)w;
            if (at >= cap) at = cap - 1;
            p += 3;
        } else {
            out[at++] = *p++;
        }
    }
    out[at] = '\0';
}

static int run(void) {
    char pattern[NAME_CAP], name[NAME_CAP], first[64], why[128], line[2 * NAME_CAP];
    if (!env_value("LOOKUP_NAME", pattern, sizeof pattern)) {
        emit(1, "lookups: LOOKUP_NAME is not set");
        return 1;
    }
    unsigned long start = env_number("LOOKUP_FIRST", 0);
    unsigned long warmup = env_number("LOOKUP_WARMUP", 1);
    unsigned long count = env_number("LOOKUP_COUNT", 100);
    if (count > MAX_COUNT) count = MAX_COUNT;
    if (warmup > MAX_COUNT) warmup = MAX_COUNT;
    uint64_t *ns = malloc(count * sizeof *ns + 1);
    if (!ns) return 1;
    for (unsigned long i = 0; i < warmup + count; i++) {
        name_for(pattern, start + i, name, sizeof name);
        uint64_t began = now_ns();
        int failed = resolve(name, first, sizeof first, why, sizeof why);
        uint64_t took = now_ns() - began;
        if (failed) {
            snprintf(line, sizeof line, "lookup %s failed: %s", name, why);
            emit(1, line);
            free(ns);
            return 1;
        }
        if (i < warmup) continue;
        ns[i - warmup] = took;
        if (i == warmup) {
            snprintf(line, sizeof line, "first %s %s", name, first);
            emit(0, line);
        }
    }
    for (unsigned long i = 0; i < count; i++) {
        snprintf(line, sizeof line, "ns %llu", (unsigned long long)ns[i]);
        emit(0, line);
    }
    snprintf(line, sizeof line, "done %lu", count);
    emit(0, line);
    free(ns);
    return 0;
}

#ifdef __wasi__
bool exports_wasi_cli_run_run(void) { return run() == 0; }
#else
int main(void) { return run(); }
#endif
