// `npm start`: the API and the rotation workers in one process (KEYTURN_COMPONENTS chooses otherwise).
import { boot } from './boot.ts';

await boot();
