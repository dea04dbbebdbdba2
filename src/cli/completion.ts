// `keyturn completion bash|zsh`: a completion script made from the command tree itself, so it never falls behind a
// new command or option. Commands and options complete; values (ids) do not, since that would call the API on every
// Tab press with the user's token.
//   bash: source <(keyturn completion bash)        (or save it under /etc/bash_completion.d/)
//   zsh:  source <(keyturn completion zsh)         (or save it as _keyturn on $fpath)
import type { Command } from 'commander';
import { usage } from './output.ts';

/** "keyturn credentials" → the words that may follow it: its subcommands and its options (with the global ones). */
function wordsByPath(program: Command): Map<string, string[]> {
  const out = new Map<string, string[]>();
  const globals = program.options.map((o) => o.long).filter((l): l is string => Boolean(l));
  const walk = (cmd: Command, path: string) => {
    const subs = cmd.commands.map((c) => c.name());
    const options = cmd.options.flatMap((o) => [o.long, o.short].filter((x): x is string => Boolean(x)));
    out.set(path, [...subs, ...new Set([...options, ...globals, '--help'])]);
    for (const c of cmd.commands) walk(c, `${path} ${c.name()}`);
  };
  walk(program, program.name());
  return out;
}

const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

export function completionScript(program: Command, shell: string): string {
  const table = wordsByPath(program);
  const name = program.name();
  const entries = [...table]
    .map(([path, words]) => `  [${quote(path)}]=${quote(words.join(' '))}`)
    .join('\n');
  if (shell === 'bash') {
    return `# bash completion for ${name} (keyturn completion bash)
declare -gA _${name}_words=(
${entries}
)
_${name}() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" cmdpath="${name}" next i w
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="\${COMP_WORDS[i]}"
    [[ "$w" == -* ]] && continue
    next="$cmdpath $w"
    [[ -n "\${_${name}_words[$next]+x}" ]] && cmdpath="$next"
  done
  COMPREPLY=( $(compgen -W "\${_${name}_words[$cmdpath]}" -- "$cur") )
}
complete -F _${name} ${name}
`;
  }
  if (shell === 'zsh') {
    const zshEntries = [...table]
      .map(([path, words]) => `  ${quote(path)} ${quote(words.join(' '))}`)
      .join('\n');
    return `#compdef ${name}
# zsh completion for ${name} (keyturn completion zsh)
typeset -gA _${name}_words
_${name}_words=(
${zshEntries}
)
_${name}() {
  local cmdpath="${name}" next w i
  for (( i = 2; i < CURRENT; i++ )); do
    w="\${words[i]}"
    [[ "$w" == -* ]] && continue
    next="$cmdpath $w"
    (( \${+_${name}_words[$next]} )) && cmdpath="$next"
  done
  compadd -- \${=_${name}_words[$cmdpath]}
}
if (( \${+functions[compdef]} )); then compdef _${name} ${name}; fi
`;
  }
  return usage(`completion: "${shell}" is not a shell this makes a script for: bash or zsh`);
}

export function addCompletionCommand(program: Command): void {
  program
    .command('completion <shell>')
    .description('print a completion script: bash or zsh (e.g. source <(keyturn completion bash))')
    .action((shell: string) => {
      process.stdout.write(completionScript(program, shell));
    });
}
