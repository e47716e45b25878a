/*
 * The e2e's CPU workload on the real node (image localhost/gpuscale-e2e/http, built by
 * tests/cluster/node_images.py): a one-request-at-a-time HTTP/1.0 server, linked static.
 *
 *   httpd [PORT [READY_AFTER_SECONDS]]      (defaults: 8080, 0)
 *
 * GET /healthz answers 503 until READY_AFTER_SECONDS have passed since start, then 200: a test
 * can tell a readinessProbe the kubelet really ran from a pod marked Ready without one. Any other
 * path answers 200 with the host name (the pod's name), so a reply through a Service says which
 * pod served it. GET /env answers 200 with the process's environment, one NAME=value a line (what
 * the kubelet and a device plugin put there, read from inside the container; cut at 16 KiB).
 * SIGTERM ends it at once with status 0.
 */
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static void reply(int fd, int status, const char *body)
{
	char head[256];
	size_t len = strlen(body);
	int n = snprintf(head, sizeof head,
			 "HTTP/1.0 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n",
			 status, status == 200 ? "OK" : "Service Unavailable", len);
	if (n > 0 && (size_t)n < sizeof head && write(fd, head, (size_t)n) == n)
		(void)!write(fd, body, len);
}

/* The environment, NAME=value a line, whole entries only, into out (size > 0). */
static void environment(char *out, size_t size)
{
	size_t used = 0;
	out[0] = '\0';
	for (char **e = environ; *e != NULL; e++) {
		size_t n = strlen(*e);
		if (used + n + 2 > size)
			break;
		memcpy(out + used, *e, n);
		out[used + n] = '\n';
		used += n + 1;
		out[used] = '\0';
	}
}

static void on_term(int sig)
{
	(void)sig;
	_exit(0);
}

int main(int argc, char **argv)
{
	int port = argc > 1 ? atoi(argv[1]) : 8080;
	long ready_after = argc > 2 ? atol(argv[2]) : 0;
	struct timespec started, now;
	struct sockaddr_in6 addr;
	struct timeval timeout = {2, 0};
	char host[256] = "unknown", body[300], req[2048];
	static char env[16384];
	int one = 1, srv, fd;

	if (port <= 0 || port > 65535 || ready_after < 0) {
		fprintf(stderr, "usage: httpd [PORT [READY_AFTER_SECONDS]]\n");
		return 2;
	}
	signal(SIGTERM, on_term);
	signal(SIGINT, on_term);
	signal(SIGPIPE, SIG_IGN);
	clock_gettime(CLOCK_MONOTONIC, &started);
	gethostname(host, sizeof host - 1);
	snprintf(body, sizeof body, "%s\n", host);

	srv = socket(AF_INET6, SOCK_STREAM, 0);
	if (srv < 0) {
		perror("socket");
		return 1;
	}
	setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	memset(&addr, 0, sizeof addr);
	addr.sin6_family = AF_INET6; /* dual-stack: IPv4 pod addresses arrive as mapped ones */
	addr.sin6_port = htons((unsigned short)port);
	addr.sin6_addr = in6addr_any;
	if (bind(srv, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(srv, 64) != 0) {
		perror("bind/listen");
		return 1;
	}
	fprintf(stderr, "httpd: %s listening on %d, ready after %ld s\n", host, port, ready_after);
	for (;;) {
		ssize_t got = 0, n;
		fd = accept(srv, NULL, NULL);
		if (fd < 0)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
		/* Only the request line matters; read until the headers end or the buffer fills. */
		while ((size_t)got < sizeof req - 1 &&
		       (n = read(fd, req + got, sizeof req - 1 - (size_t)got)) > 0) {
			got += n;
			req[got] = '\0';
			if (strstr(req, "\r\n\r\n") != NULL)
				break;
		}
		req[got > 0 ? got : 0] = '\0';
		if (strncmp(req, "GET /healthz", 12) == 0) {
			clock_gettime(CLOCK_MONOTONIC, &now);
			if (now.tv_sec - started.tv_sec >= ready_after)
				reply(fd, 200, "ok\n");
			else
				reply(fd, 503, "starting\n");
		} else if (strncmp(req, "GET /env ", 9) == 0) {
			environment(env, sizeof env);
			reply(fd, 200, env);
		} else {
			reply(fd, 200, body);
		}
		close(fd);
	}
}
