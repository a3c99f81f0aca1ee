// echo (wasi:cli/run command with wasi:sockets): a TCP echo server on 0.0.0.0:PORT, the
// port from the environment variable ECHO_PORT (default 7000). Prints
// "listening on 0.0.0.0:PORT" once it listens, then serves one connection at a time,
// sending back everything it reads until the peer closes, forever. Each wait blocks on a
// wasi:io/poll pollable. Exits 1 with a line on stderr if it cannot listen.
//
// With LOOKUP=NAME in the environment it looks NAME up instead (wasi:sockets
// ip-name-lookup, as getaddrinfo would), prints "address A" for each address it gets and
// exits 0, or prints "lookup NAME failed: error CODE" (the wasi:sockets error code) on
// stderr and exits 1.
#include <stdio.h>
#include <string.h>

#include "bindings/tcp-echo/tcp_echo.h"

typedef wasi_sockets_tcp_borrow_tcp_socket_t socket_t;

static void print(wasi_io_streams_own_output_stream_t stream, const char *a, const char *b) {
    wasi_io_streams_borrow_output_stream_t s = wasi_io_streams_borrow_output_stream(stream);
    const char *parts[] = {a, b, "\n"};
    for (int i = 0; i < 3; i++) {
        tcp_echo_list_u8_t bytes = {(uint8_t *)parts[i], strlen(parts[i])};
        wasi_io_streams_stream_error_t err;
        if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(s, &bytes, &err) &&
            err.tag == WASI_IO_STREAMS_STREAM_ERROR_LAST_OPERATION_FAILED)
            wasi_io_error_error_drop_own(err.val.last_operation_failed);
    }
    wasi_io_streams_output_stream_drop_own(stream);
}

// Waits until the socket's pending operation may have progressed.
static void wait(socket_t sock) {
    wasi_io_poll_own_pollable_t ready = wasi_sockets_tcp_method_tcp_socket_subscribe(sock);
    wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(ready));
    wasi_io_poll_pollable_drop_own(ready);
}

// The finish-* half of an asynchronous socket operation, retried while it would block.
static int finish(socket_t sock, bool (*op)(socket_t, wasi_sockets_tcp_error_code_t *)) {
    wasi_sockets_tcp_error_code_t err;
    while (!op(sock, &err)) {
        if (err != WASI_SOCKETS_NETWORK_ERROR_CODE_WOULD_BLOCK) return 0;
        wait(sock);
    }
    return 1;
}

// Sends back everything read from IN to OUT until the peer closes either side.
static void echo(wasi_io_streams_borrow_input_stream_t in,
                 wasi_io_streams_borrow_output_stream_t out) {
    for (;;) {
        tcp_echo_list_u8_t chunk;
        wasi_io_streams_stream_error_t err;
        if (!wasi_io_streams_method_input_stream_blocking_read(in, 4096, &chunk, &err)) {
            if (err.tag == WASI_IO_STREAMS_STREAM_ERROR_LAST_OPERATION_FAILED)
                wasi_io_error_error_drop_own(err.val.last_operation_failed);
            return;
        }
        // At most 4096 bytes, as much as one blocking-write-and-flush takes.
        int sent = wasi_io_streams_method_output_stream_blocking_write_and_flush(out, &chunk, &err);
        tcp_echo_list_u8_free(&chunk);
        if (!sent) {
            if (err.tag == WASI_IO_STREAMS_STREAM_ERROR_LAST_OPERATION_FAILED)
                wasi_io_error_error_drop_own(err.val.last_operation_failed);
            return;
        }
    }
}

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

static void print_address(const wasi_sockets_network_ip_address_t *ip) {
    char text[48];
    if (ip->tag == WASI_SOCKETS_NETWORK_IP_ADDRESS_IPV4) {
        const wasi_sockets_network_ipv4_address_t *a = &ip->val.ipv4;
        snprintf(text, sizeof text, "%u.%u.%u.%u", a->f0, a->f1, a->f2, a->f3);
    } else {
        const wasi_sockets_network_ipv6_address_t *a = &ip->val.ipv6;
        snprintf(text, sizeof text, "%x:%x:%x:%x:%x:%x:%x:%x", a->f0, a->f1, a->f2, a->f3,
                 a->f4, a->f5, a->f6, a->f7);
    }
    print(wasi_cli_stdout_get_stdout(), "address ", text);
}

static bool lookup_failed(const char *name, unsigned code) {
    char text[300];
    snprintf(text, sizeof text, "%s failed: error %u", name, code);
    print(wasi_cli_stderr_get_stderr(), "lookup ", text);
    return false;
}

// Looks NAME up and prints its addresses, waiting on the stream's pollable.
static bool lookup(const char *name) {
    wasi_sockets_instance_network_own_network_t network =
        wasi_sockets_instance_network_instance_network();
    tcp_echo_string_t text = {(uint8_t *)name, strlen(name)};
    wasi_sockets_ip_name_lookup_own_resolve_address_stream_t stream;
    wasi_sockets_ip_name_lookup_error_code_t err;
    if (!wasi_sockets_ip_name_lookup_resolve_addresses(wasi_sockets_network_borrow_network(network),
                                                       &text, &stream, &err))
        return lookup_failed(name, err);
    wasi_sockets_ip_name_lookup_borrow_resolve_address_stream_t s =
        wasi_sockets_ip_name_lookup_borrow_resolve_address_stream(stream);
    for (;;) {
        wasi_sockets_ip_name_lookup_option_ip_address_t next;
        if (!wasi_sockets_ip_name_lookup_method_resolve_address_stream_resolve_next_address(s, &next,
                                                                                            &err)) {
            if (err != WASI_SOCKETS_NETWORK_ERROR_CODE_WOULD_BLOCK) return lookup_failed(name, err);
            wasi_io_poll_own_pollable_t ready =
                wasi_sockets_ip_name_lookup_method_resolve_address_stream_subscribe(s);
            wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(ready));
            wasi_io_poll_pollable_drop_own(ready);
            continue;
        }
        if (!next.is_some) break;
        print_address(&next.val);
    }
    wasi_sockets_ip_name_lookup_resolve_address_stream_drop_own(stream);
    wasi_sockets_network_network_drop_own(network);
    return true;
}

static uint16_t port_from_env(void) {
    tcp_echo_list_tuple2_string_string_t env;
    wasi_cli_environment_get_environment(&env);
    unsigned long port = 7000;
    for (size_t i = 0; i < env.len; i++) {
        tcp_echo_string_t *key = &env.ptr[i].f0, *value = &env.ptr[i].f1;
        if (key->len != 9 || memcmp(key->ptr, "ECHO_PORT", 9) != 0) continue;
        port = 0;
        for (size_t j = 0; j < value->len && value->ptr[j] >= '0' && value->ptr[j] <= '9'; j++)
            port = port * 10 + (value->ptr[j] - '0');
    }
    tcp_echo_list_tuple2_string_string_free(&env);
    return port > 0 && port < 65536 ? (uint16_t)port : 7000;
}

bool exports_wasi_cli_run_run(void) {
    char name[256];
    if (env_value("LOOKUP", name, sizeof name)) return lookup(name);
    uint16_t port = port_from_env();
    char port_text[8];
    int at = sizeof port_text;
    port_text[--at] = '\0';
    for (unsigned p = port; p; p /= 10) port_text[--at] = (char)('0' + p % 10);

    wasi_sockets_instance_network_own_network_t network =
        wasi_sockets_instance_network_instance_network();
    wasi_sockets_tcp_own_tcp_socket_t listener;
    wasi_sockets_tcp_error_code_t err;
    if (!wasi_sockets_tcp_create_socket_create_tcp_socket(WASI_SOCKETS_NETWORK_IP_ADDRESS_FAMILY_IPV4,
                                                          &listener, &err)) {
        print(wasi_cli_stderr_get_stderr(), "echo: cannot create a TCP socket", "");
        return false;
    }
    socket_t sock = wasi_sockets_tcp_borrow_tcp_socket(listener);
    wasi_sockets_tcp_ip_socket_address_t any = {
        .tag = WASI_SOCKETS_NETWORK_IP_SOCKET_ADDRESS_IPV4, .val.ipv4 = {.port = port}};
    if (!wasi_sockets_tcp_method_tcp_socket_start_bind(
            sock, wasi_sockets_network_borrow_network(network), &any, &err) ||
        !finish(sock, wasi_sockets_tcp_method_tcp_socket_finish_bind) ||
        !wasi_sockets_tcp_method_tcp_socket_start_listen(sock, &err) ||
        !finish(sock, wasi_sockets_tcp_method_tcp_socket_finish_listen)) {
        print(wasi_cli_stderr_get_stderr(), "echo: cannot listen on 0.0.0.0:", port_text + at);
        return false;
    }
    print(wasi_cli_stdout_get_stdout(), "listening on 0.0.0.0:", port_text + at);

    for (;;) {
        wasi_sockets_tcp_tuple3_own_tcp_socket_own_input_stream_own_output_stream_t conn;
        if (!wasi_sockets_tcp_method_tcp_socket_accept(sock, &conn, &err)) {
            if (err == WASI_SOCKETS_NETWORK_ERROR_CODE_WOULD_BLOCK) wait(sock);
            continue; // other errors concern one connection attempt only
        }
        echo(wasi_io_streams_borrow_input_stream(conn.f1),
             wasi_io_streams_borrow_output_stream(conn.f2));
        wasi_io_streams_input_stream_drop_own(conn.f1);
        wasi_io_streams_output_stream_drop_own(conn.f2);
        wasi_sockets_tcp_tcp_socket_drop_own(conn.f0);
    }
}
