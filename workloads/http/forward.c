// forward (wasi:http handler): for every request, GETs the URL in the environment
// variable TARGET_URL (http://HOST:PORT/PATH) with an outgoing wasi:http request and
// answers 200 "forwarded: STATUS\n" followed by the upstream body, or 502 with the
// reason when the outgoing request fails (e.g. "outgoing request failed:
// HTTP-request-denied" when the host refuses it). With TIMEOUT_MS=N in the environment,
// the outgoing request's connect and first-byte timeouts are N ms (the host's defaults
// otherwise), as a client that gives up on a lost peer.
#include <stdlib.h>
#include <string.h>

#include "common.h"

// The error-code cases of wasi:http/types, in order.
static const char *ERROR_CODES[] = {
    "DNS-timeout", "DNS-error", "destination-not-found", "destination-unavailable",
    "destination-IP-prohibited", "destination-IP-unroutable", "connection-refused",
    "connection-terminated", "connection-timeout", "connection-read-timeout",
    "connection-write-timeout", "connection-limit-reached", "TLS-protocol-error",
    "TLS-certificate-error", "TLS-alert-received", "HTTP-request-denied",
    "HTTP-request-length-required", "HTTP-request-body-size", "HTTP-request-method-invalid",
    "HTTP-request-URI-invalid", "HTTP-request-URI-too-long",
    "HTTP-request-header-section-size", "HTTP-request-header-size",
    "HTTP-request-trailer-section-size", "HTTP-request-trailer-size",
    "HTTP-response-incomplete", "HTTP-response-header-section-size",
    "HTTP-response-header-size", "HTTP-response-body-size",
    "HTTP-response-trailer-section-size", "HTTP-response-trailer-size",
    "HTTP-response-transfer-coding", "HTTP-response-content-coding", "HTTP-response-timeout",
    "HTTP-upgrade-failed", "HTTP-protocol-error", "loop-detected", "configuration-error",
    "internal-error"};

// Answers 502 "outgoing request failed: CODE[: DETAIL]" and frees ERR.
static void fail(response_out_t out, wasi_http_types_error_code_t *err) {
    text_t body = {0};
    text_str(&body, "outgoing request failed: ");
    if (err->tag < sizeof ERROR_CODES / sizeof *ERROR_CODES)
        text_str(&body, ERROR_CODES[err->tag]);
    else
        text_str(&body, "unknown error");
    if (err->tag == WASI_HTTP_TYPES_ERROR_CODE_INTERNAL_ERROR && err->val.internal_error.is_some) {
        text_str(&body, ": ");
        text_add(&body, err->val.internal_error.val.ptr, err->val.internal_error.val.len);
    }
    text_str(&body, "\n");
    wasi_http_types_error_code_free(err);
    respond(out, 502, body.ptr, body.len);
    text_free(&body);
}

// Appends everything the upstream response's body holds to OUT.
static void read_body(wasi_http_types_borrow_incoming_response_t response, text_t *out) {
    wasi_http_types_own_incoming_body_t body;
    if (!wasi_http_types_method_incoming_response_consume(response, &body)) return;
    wasi_http_types_own_input_stream_t stream;
    if (wasi_http_types_method_incoming_body_stream(wasi_http_types_borrow_incoming_body(body),
                                                    &stream)) {
        wasi_io_streams_borrow_input_stream_t s = wasi_io_streams_borrow_input_stream(stream);
        for (;;) {
            handler_list_u8_t chunk;
            wasi_io_streams_stream_error_t err;
            if (!wasi_io_streams_method_input_stream_blocking_read(s, 65536, &chunk, &err)) {
                if (err.tag == WASI_IO_STREAMS_STREAM_ERROR_LAST_OPERATION_FAILED)
                    wasi_io_error_error_drop_own(err.val.last_operation_failed);
                break; // closed: the whole body is read
            }
            text_add(out, chunk.ptr, chunk.len);
            handler_list_u8_free(&chunk);
        }
        wasi_io_streams_input_stream_drop_own(stream);
    }
    wasi_http_types_future_trailers_drop_own(wasi_http_types_static_incoming_body_finish(body));
}

void exports_wasi_http_incoming_handler_handle(wasi_http_types_own_incoming_request_t request,
                                               response_out_t out) {
    wasi_http_types_incoming_request_drop_own(request);

    text_t url = {0};
    env_get("TARGET_URL", &url);
    text_add(&url, "", 1); // a C string from here on
    if (strncmp(url.ptr, "http://", 7) != 0) {
        static const char msg[] = "TARGET_URL is not an http:// URL\n";
        respond(out, 502, msg, sizeof msg - 1);
        text_free(&url);
        return;
    }
    char *authority = url.ptr + 7;
    char *slash = strchr(authority, '/');
    handler_string_t host, path;
    handler_string_dup_n(&host, authority, slash ? (size_t)(slash - authority) : strlen(authority));
    handler_string_dup(&path, slash ? slash : "/");
    text_free(&url);

    wasi_http_types_own_outgoing_request_t outgoing =
        wasi_http_types_constructor_outgoing_request(wasi_http_types_constructor_fields());
    wasi_http_types_borrow_outgoing_request_t o = wasi_http_types_borrow_outgoing_request(outgoing);
    wasi_http_types_scheme_t scheme = {.tag = WASI_HTTP_TYPES_SCHEME_HTTP};
    wasi_http_types_method_outgoing_request_set_scheme(o, &scheme);
    wasi_http_types_method_outgoing_request_set_authority(o, &host);
    wasi_http_types_method_outgoing_request_set_path_with_query(o, &path);
    handler_string_free(&host);
    handler_string_free(&path);

    wasi_http_types_own_request_options_t options;
    wasi_http_types_own_request_options_t *maybe_options = NULL;
    text_t timeout = {0};
    if (env_get("TIMEOUT_MS", &timeout)) {
        text_add(&timeout, "", 1);
        wasi_http_types_duration_t ns = strtoull(timeout.ptr, NULL, 10) * 1000000ull;
        options = wasi_http_types_constructor_request_options();
        wasi_http_types_borrow_request_options_t b = wasi_http_types_borrow_request_options(options);
        wasi_http_types_method_request_options_set_connect_timeout(b, &ns);
        wasi_http_types_method_request_options_set_first_byte_timeout(b, &ns);
        maybe_options = &options;
    }
    text_free(&timeout);

    wasi_http_types_own_future_incoming_response_t future;
    wasi_http_types_error_code_t err;
    if (!wasi_http_outgoing_handler_handle(outgoing, maybe_options, &future, &err)) {
        fail(out, &err);
        return;
    }
    wasi_http_types_borrow_future_incoming_response_t f =
        wasi_http_types_borrow_future_incoming_response(future);
    wasi_http_types_own_pollable_t ready = wasi_http_types_method_future_incoming_response_subscribe(f);
    wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(ready));
    wasi_io_poll_pollable_drop_own(ready);
    wasi_http_types_result_result_own_incoming_response_error_code_void_t got;
    int ok = wasi_http_types_method_future_incoming_response_get(f, &got);
    wasi_http_types_future_incoming_response_drop_own(future);
    if (!ok || got.is_err) { // cannot happen after the pollable is ready, once
        static const char msg[] = "outgoing request failed: no response\n";
        respond(out, 502, msg, sizeof msg - 1);
        return;
    }
    if (got.val.ok.is_err) {
        fail(out, &got.val.ok.val.err);
        return;
    }
    wasi_http_types_own_incoming_response_t response = got.val.ok.val.ok;
    wasi_http_types_borrow_incoming_response_t r = wasi_http_types_borrow_incoming_response(response);
    text_t body = {0};
    text_str(&body, "forwarded: ");
    text_uint(&body, wasi_http_types_method_incoming_response_status(r));
    text_str(&body, "\n");
    read_body(r, &body);
    wasi_http_types_incoming_response_drop_own(response);
    respond(out, 200, body.ptr, body.len);
    text_free(&body);
}
