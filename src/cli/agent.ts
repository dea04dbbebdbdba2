// `keyturn agent --config agent.yaml [--once]`: the long-running renderer (a sidecar, a systemd unit) or, with
// --once, an init container's single render. The logic is in src/agent; this is start-up, exit codes and signals.
//   exit 0: --once rendered every template, or SIGTERM/SIGINT
//   exit 1: --once could not render a template, or the start failed (unknown credential, refused token, …)
//   exit 2: the configuration is not valid
import type { Command } from 'commander';
import { AgentStartError, KeyturnAgent } from '../agent/agent.ts';
import { AgentConfigError, loadAgentConfig } from '../agent/config.ts';
import { runInNewSecretScope } from '../crypto/secret-scope.ts';
import { createLogger } from '../logging/logger.ts';

export function addAgentCommand(program: Command): void {
  program
    .command('agent')
    .description(
      'render files from credentials and reload the service that reads them (see README, "keyturn agent")',
    )
    .requiredOption('--config <file>', 'the agent configuration (YAML)')
    .option('--once', 'render every template once and exit (init containers); no reload is run')
    .action(async (opts: { config: string; once?: boolean }) => {
      const fail = (message: string, code: number): never => {
        process.stderr.write(`keyturn agent: ${message}\n`);
        process.exit(code);
      };
      let config: Awaited<ReturnType<typeof loadAgentConfig>>;
      try {
        config = await loadAgentConfig(opts.config);
      } catch (err) {
        if (err instanceof AgentConfigError) return fail(err.message, 2);
        throw err;
      }
      const level = process.env.LOG_LEVEL ?? 'info';
      const logger = createLogger({
        level,
        format: process.env.LOG_FORMAT === 'pretty' ? 'pretty' : 'json',
      }).child({ component: 'agent' });
      // Every secret the agent holds (its token, the passwords it read) is cut out of any log line it writes.
      const secrets = new Set<string>();
      await runInNewSecretScope(async () => {
        const agent = new KeyturnAgent(config, logger, { once: Boolean(opts.once), secrets });
        const stop = (signal: string) => {
          logger.info({ signal }, 'agent: stopping');
          void agent.stop().then(() => process.exit(0));
        };
        process.once('SIGTERM', () => stop('SIGTERM'));
        process.once('SIGINT', () => stop('SIGINT'));
        let failed: number;
        try {
          ({ failed } = await agent.start(opts.once ? 5 : Number.POSITIVE_INFINITY));
        } catch (err) {
          if (err instanceof AgentStartError) {
            await agent.stop();
            return fail(err.message, 1);
          }
          throw err;
        }
        if (opts.once) {
          await agent.stop();
          if (failed > 0) return fail(`${failed} template(s) could not be rendered (see the log above)`, 1);
          logger.info({ templates: config.templates.length }, 'agent: every template rendered');
          process.exit(0);
        }
        agent.follow();
      }, secrets);
    });
}
