#!/usr/bin/env node
// The `keyturn` command. Node 24 runs the TypeScript source directly (type stripping).
import '../src/cli/main.ts';
