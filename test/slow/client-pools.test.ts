// Issue 13's acceptance run for the client's pools: the pg and mysql2 pools keep a steady query load through 50
// rotations each, with no failed query and every old pool closed. The same tests as test/integration/client.test.ts,
// with 50 rotations instead of 5.
process.env.KEYTURN_TEST_CLIENT_ROTATIONS = '50';
await import('../integration/client.test.ts');
