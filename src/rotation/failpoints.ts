// Failpoints: named places in the rotation protocol where a test can make the worker die (SIGKILL itself)
// or throw, to prove that every step resumes (I4). Off unless KEYTURN_FAILPOINTS names them, e.g.
// "after-set=kill", "before-test=throw:3" (throw the first three times) or "before-test=sleep:3000" (a slow
// step, for shutdown tests). Refused in production by config.

type Action = { kind: 'kill' } | { kind: 'throw'; remaining: number } | { kind: 'sleep'; ms: number };

export class FailpointError extends Error {
  constructor(name: string) {
    super(`failpoint ${name} fired`);
    this.name = 'FailpointError';
  }
}

export class Failpoints {
  readonly #actions = new Map<string, Action>();

  constructor(spec: string) {
    for (const part of spec
      .split(',')
      .map((p) => p.trim())
      .filter(Boolean)) {
      const [name, action = 'kill'] = part.split('=');
      if (!name) continue;
      const throwing = /^throw(?::([1-9][0-9]{0,8}))?$/.exec(action);
      const sleeping = /^sleep:([1-9][0-9]{0,6})$/.exec(action);
      if (action === 'kill') this.#actions.set(name, { kind: 'kill' });
      else if (sleeping) this.#actions.set(name, { kind: 'sleep', ms: Number(sleeping[1]) });
      else if (throwing) {
        const remaining = throwing[1] ? Number(throwing[1]) : Number.POSITIVE_INFINITY;
        this.#actions.set(name, { kind: 'throw', remaining });
      } else {
        // A typo must not silently disable the fault a test relies on.
        throw new Error(
          `KEYTURN_FAILPOINTS: unknown action "${action}" for ${name} (kill, throw, throw:N with N >= 1, sleep:MS)`,
        );
      }
    }
  }

  get enabled(): boolean {
    return this.#actions.size > 0;
  }

  async hit(name: string): Promise<void> {
    const action = this.#actions.get(name);
    if (!action) return;
    if (action.kind === 'kill') process.kill(process.pid, 'SIGKILL');
    else if (action.kind === 'sleep') await new Promise((resolve) => setTimeout(resolve, action.ms));
    else if (action.remaining > 0) {
      action.remaining -= 1;
      throw new FailpointError(name);
    }
  }
}
