/*
 * The pod sandbox's only process: containerd's sandbox_image, built by
 * tests/cluster/node_images.py.
 *
 * It holds the pod's namespaces open, so it does nothing but wait: children that end up under it
 * are reaped, SIGTERM or SIGINT ends it with status 0. The signals are blocked and taken with
 * sigwait() because PID 1 of a PID namespace drops signals it leaves at their default action.
 */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>

int main(void)
{
	sigset_t wanted;
	int sig;

	sigemptyset(&wanted);
	sigaddset(&wanted, SIGTERM);
	sigaddset(&wanted, SIGINT);
	sigaddset(&wanted, SIGCHLD);
	if (sigprocmask(SIG_BLOCK, &wanted, NULL) != 0)
		return 2;
	for (;;) {
		if (sigwait(&wanted, &sig) != 0)
			return 2;
		if (sig != SIGCHLD)
			return 0;
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
	}
}
