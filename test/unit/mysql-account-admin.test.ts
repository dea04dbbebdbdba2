// Which SHOW GRANTS lines would let a MySQL/MariaDB lease account act on other accounts (finding 4 of issue 11), in
// the forms both servers print, MySQL 8's included (the machine runs MariaDB only: the integration tests cover
// what it prints, these the rest).
import { describe, expect, it } from 'vitest';
import { accountAdminIn } from '../../src/targets/mysql/mysql-target.ts';

describe('finding 4: accountAdminIn (MySQL/MariaDB grants a lease must not copy)', () => {
  it.each([
    ['GRANT CREATE USER ON *.* TO `app`@`%`', 'CREATE USER ON *.*'],
    ["GRANT SELECT, UPDATE ON *.* TO 'app'@'%'", 'UPDATE ON *.*'],
    ['GRANT ALL PRIVILEGES ON *.* TO `app`@`%`', 'ALL PRIVILEGES ON *.*'],
    ['GRANT DROP ON *.* TO `app`@`%`', 'DROP ON *.*'],
    ['GRANT SELECT ON `app`.* TO `app`@`%` WITH GRANT OPTION', 'WITH GRANT OPTION'],
    ['GRANT USAGE ON *.* TO `app`@`%` WITH GRANT OPTION', 'WITH GRANT OPTION'],
    ['GRANT PROXY ON `root`@`localhost` TO `app`@`%`', 'PROXY'],
    ['GRANT `admins` TO `app`@`%` WITH ADMIN OPTION', 'WITH ADMIN OPTION'],
    ['GRANT `r`@`%` TO `app`@`%` WITH ADMIN OPTION', 'WITH ADMIN OPTION'],
    // MySQL 8 dynamic privileges and MariaDB's split of SUPER.
    ['GRANT SYSTEM_USER,ROLE_ADMIN ON *.* TO `app`@`%`', 'SYSTEM_USER ON *.*'],
    ['GRANT SYSTEM_VARIABLES_ADMIN ON *.* TO `app`@`%`', 'SYSTEM_VARIABLES_ADMIN ON *.*'],
    ['GRANT SET_ANY_DEFINER ON *.* TO `app`@`%`', 'SET_ANY_DEFINER ON *.*'],
    ['GRANT REPLICATION_SLAVE_ADMIN ON *.* TO `app`@`%`', 'REPLICATION_SLAVE_ADMIN ON *.*'],
    ['GRANT BINLOG REPLAY, SET USER ON *.* TO `app`@`%`', 'BINLOG REPLAY ON *.*'],
    ['GRANT CONNECTION ADMIN ON *.* TO `app`@`%`', 'CONNECTION ADMIN ON *.*'],
    // The account tables: the mysql schema by name, by a pattern that matches it, one table, one column.
    ['GRANT INSERT ON `mysql`.* TO `app`@`%`', 'INSERT ON mysql.*'],
    ['GRANT UPDATE ON `%`.* TO `app`@`%`', 'UPDATE ON %.* (its pattern matches the mysql schema)'],
    [
      'GRANT ALL PRIVILEGES ON `my%`.* TO `app`@`%`',
      'ALL PRIVILEGES ON my%.* (its pattern matches the mysql schema)',
    ],
    ['GRANT DELETE ON `mysq_`.* TO `app`@`%`', 'DELETE ON mysq_.* (its pattern matches the mysql schema)'],
    ['GRANT UPDATE (`Priv`) ON `mysql`.`global_priv` TO `app`@`%`', 'UPDATE ON mysql.global_priv'],
  ])('%s → %s', (line, why) => {
    expect(accountAdminIn(line)).toBe(why);
  });

  it.each([
    'GRANT USAGE ON *.* TO `app`@`%`',
    "GRANT USAGE ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD '*2B602296A79E0A8784ACC5C88D92E46588CCA3C3'",
    'GRANT SELECT, SHOW VIEW, PROCESS ON *.* TO `app`@`%`',
    'GRANT ALL PRIVILEGES ON `payments`.* TO `app`@`%`',
    // Escaped wildcards are literal; a pattern must match all of "mysql".
    'GRANT ALL PRIVILEGES ON `my\\_sql`.* TO `app`@`%`',
    'GRANT ALL PRIVILEGES ON `mysql\\_app`.* TO `app`@`%`',
    'GRANT ALL PRIVILEGES ON `mysql_app`.* TO `app`@`%`',
    'GRANT SELECT ON `mysql`.* TO `app`@`%`',
    'GRANT CREATE TEMPORARY TABLES ON `payments`.* TO `app`@`%`',
    'GRANT EXECUTE ON PROCEDURE `mysql`.`p` TO `app`@`%`',
    'GRANT `app_access` TO `app`@`%`',
    'SET DEFAULT ROLE `app_access` FOR `app`@`%`',
    'REVOKE UPDATE ON `mysql`.* FROM `app`@`%`',
    // Keywords inside quoted names are names.
    'GRANT SELECT ON `with grant option`.* TO `app`@`%`',
    'GRANT SELECT ON `my sql`.* TO `app`@`%`',
  ])('%s → nothing', (line) => {
    expect(accountAdminIn(line)).toBeNull();
  });
});
